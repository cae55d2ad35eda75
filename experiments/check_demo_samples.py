"""How recognisable are the bundled demo's digits? A logistic regression trained on 4,000
real MNIST digits (32x32) classifies 100 samples (10 per digit); compare with its accuracy
on 1,000 held-out real digits. Usage: python experiments/check_demo_samples.py [model folder]"""

import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from polymixer import bundled_checkpoint
from polymixer.data import mnist_digits
from polymixer.sample import generate, load_for_sampling

torch.set_num_threads(2)
data = mnist_digits(32)
X, y = data.images.reshape(len(data), -1).numpy(), data.labels.numpy()
order = np.random.default_rng(0).permutation(len(data))
clf = LogisticRegression(max_iter=300, C=0.05).fit(X[order[:4000]], y[order[:4000]])
print(f"held-out real digits: {clf.score(X[order[4000:]], y[order[4000:]]):.3f} accuracy")

model, pipeline = load_for_sampling(sys.argv[1] if len(sys.argv) > 1 else bundled_checkpoint("demo"))
samples, labels = generate(model, pipeline, list(range(10)), per_class=10, steps=20, cfg_scale=2.0, seed=1)
pred = clf.predict(samples.reshape(len(samples), -1).numpy())
print(f"generated digits:     {(pred == labels.numpy()).mean():.3f} accuracy")
for digit in range(10):
    print(f"  {digit}: {(pred[labels.numpy() == digit] == digit).mean():.1f}")
