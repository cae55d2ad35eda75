"""Generate a clip frame by frame with the bundled PoM video DiT, check it equals joint
denoising, and continue generating past the training length at constant memory.

    python examples/video_frame_by_frame.py          # writes video_seq.gif and video_long.gif
"""

import torch

import polymixer
from polymixer.media import save_clip
from polymixer.sample import load_for_sampling
from polymixer.video import iter_video_frames, sample_video

model, pipeline = load_for_sampling(polymixer.bundled_checkpoint("video_demo"), kind="video")
labels = torch.tensor([3, 7])

# Same seed, same video: frame after frame (states per sampling step and block) or all at once.
seq = sample_video(model, pipeline, labels, frames=8, mode="sequential", steps=20, seed=0)
joint = sample_video(model, pipeline, labels, frames=8, mode="joint", steps=20, seed=0)
print(f"sequential vs joint: max difference {(seq - joint).abs().max():.2e}")
save_clip(seq, "video_seq.gif", fps=pipeline.frames_per_second)

# Longer than the 8 training frames: frames are streamed out one by one, memory stays flat.
frames = [f.float().clamp(-1, 1) for f in iter_video_frames(model, pipeline, labels, frames=32, steps=20, seed=1)]
save_clip(torch.cat(frames, dim=1), "video_long.gif", fps=pipeline.frames_per_second)
print("wrote video_seq.gif and video_long.gif")
