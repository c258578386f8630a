"""What each `funetgan` command does (`cli` parses the arguments and calls them):
`training` (train), `trained` (test, predict, mood, calibrate, export: commands on a
trained run), `demo`; `common` holds what they share (errors, output folders, notes)."""
