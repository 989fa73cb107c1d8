"""One module per headless `qgf` subcommand: HELP, add_arguments(parser), run(args)."""
