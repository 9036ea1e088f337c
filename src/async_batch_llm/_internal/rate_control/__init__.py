"""Rate control internals: header parsing, pacing, per-scope learning and the controller."""
