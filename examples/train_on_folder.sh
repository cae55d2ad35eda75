#!/usr/bin/env bash
# Your own images: my_images/<class name>/*.png|jpg..., resized and centre-cropped to 64x64.
# Unreadable files stop the run with an error naming the file; --skip-bad-files skips them.
set -euo pipefail
polymixer train --data my_images --image-size 64 --channels 3 --preset DiT-C/4 \
  --steps 20000 --batch-size 32 --lr 5e-4 --out runs/my_images --skip-bad-files true

# Latent diffusion on a local diffusers AutoencoderKL folder (pip install 'polymixer[latent]'):
# polymixer train --data my_images --image-size 256 --vae path/to/sd-vae-ft-ema --preset DiT-S/2 --out runs/latent

# Two processes on one machine (gloo on CPU, NCCL on GPU); multi-node: add --nnodes/--rdzv-endpoint.
# torchrun --nproc_per_node 2 -m polymixer.cli train --data my_images --image-size 64 --out runs/ddp

polymixer sample --checkpoint runs/my_images/ema_model --classes all --per-class 8 --cfg 3 \
  --steps 40 --sampler heun --seed 0 --out my_grid.png --save-array my_samples.npz
