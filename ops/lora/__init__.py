"""LoRA attacks: attack sets, Spectral DeTuning (hidden base recovery), DSiRe (dataset size)."""
