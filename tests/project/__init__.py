"""Tests of the project as a whole: the end-to-end run, the README, the commands, the import contracts, the diagram."""
