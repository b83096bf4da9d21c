"""The reference-batch target study (issue 5): can DSM targets estimated from a reference batch of data, with widened
noise, and a classifier trained on the guided score (guided DSM) make classifier guidance on learned ring8 models as
accurate as classifier-free guidance? Results and commands: README.md in this folder.

    losses.py       the study's losses: DSM with a reference-batch target and widened noise, and the guided-DSM
                    classifier objective (not in the library; loss objects for the library's trainer)
    guidance.py     trains the study's models and runs the guidance benchmark on them
    sw_seeds.py     the w = 1 SW2 target over several sample seeds and reference sets
    score_error.py  where a learned score is wrong, by noise level, on the data and between the modes
"""
