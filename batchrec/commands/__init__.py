"""One module per `batchrec` command group; each only parses flags and calls a stage."""
