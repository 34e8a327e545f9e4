"""mtrec pipeline: data, training, evaluation, launching and the `mtrec` CLI."""
