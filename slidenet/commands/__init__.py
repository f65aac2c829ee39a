"""One module per `slidenet` subcommand; see `slidenet.cli`."""
