"""The live pipeline (coming): incremental folding of new Bronze rows and the `replay follow` loop."""
