"""What test and predict write for people: the report, its plots, tables, masks and overlays."""
