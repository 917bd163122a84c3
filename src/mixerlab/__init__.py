"""mixerlab: autonomous discovery of linear-attention sequence mixers, evaluated on the MAD synthetic tasks.

Stages of the research loop, one package each: `tasks` (data), `mixers` and `model` (what is trained),
`train` (how), `evaluate` (MAD scores of one mixer). `cli` is the command line.
"""

__version__ = "0.1.0"
