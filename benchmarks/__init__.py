"""Speed and quality measurements of scoresde (not tests). Run each from the repository root:

    python -m benchmarks.quality_vs_nfe      # sampler quality versus NFE on exact scores (VP)
    python -m benchmarks.peers_quality       # our samplers and the peers' same algorithms side by side
    python -m benchmarks.overhead            # per-step loop overhead against the peers, zero-cost score
    python -m benchmarks.train_toy           # training on 2D data in seconds, sampled with several samplers
    python -m benchmarks.train_overhead      # a DSM step against a bare forward + backward + Adam step
    python -m benchmarks.likelihood          # probability-flow NLL of a learned ring8 model; bits/dim
    python -m benchmarks.train_digits        # class-conditional UNet on the 8 x 8 digits in 300 s
    python -m benchmarks.unet_speed          # training-step throughput of the digits UNet, float32 vs bf16
    python -m benchmarks.guidance            # classifier-free and classifier guidance on learned ring8 models

Each prints a table and writes JSON to benchmarks/results/; RESULTS.md holds the figures and the commands that
produced them. Modules starting with an underscore are shared code; `experiments/` holds research studies that are
not headline benchmarks. Nothing in `scoresde` imports this package.
"""
