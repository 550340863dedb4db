"""The reference back end for the pilecore protocol, written from docs/protocol.md alone."""
