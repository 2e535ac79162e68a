"""Models: presets (prompts, padding, pooling per family), pooling, and the encoder.

Submodules, imported directly so that importing one does not pull the others:
`koemb.model.pooling.pool`, `koemb.model.presets` (`Preset`, `get_preset`, `detect_preset`,
`resolve_preset`), `koemb.model.encoder.Encoder`.
"""
