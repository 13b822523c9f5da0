#!/usr/bin/env bash
# Issue 16: the parts of the committed reproduction that the declared output space changes.
#
# ResNet-56 is cross-entropy-trained: its pixel-removal curves are now its softmax probability
# and its localisation grids are drawn from images with softmax probability > 0.5 (before: the
# sigmoid of the logit, which saturates at 1.0 for this model); RISE and LIME now score a
# CoDA-Net by its sigmoid (it is BCE-trained; before: softmax). Every other part computes the
# same numbers as before, so only these parts are re-run, at the n of the committed runs, and
# results/supersede.py takes the old rows out of the old run folders (recorded in their
# manifests). Resumable: re-run the script after a kill.
set -euo pipefail
cd "$(dirname "$0")/.."
AB=${AB:-attrib-bench}
OUT=${OUT:-results/cifar10}
PY=${PY:-python}
DEVICE=${DEVICE:-cpu}

"$AB" run --model resnet56 --method grad,ixg,deeplift,gradcam --metric localisation,pixel-removal \
    --device "$DEVICE" --out "$OUT/gradient-resnet56" --quiet \
    --set localisation.num_grids=32 --set pixel-removal.num_images=32
"$AB" run --model resnet56 --method intgrad --metric localisation,pixel-removal \
    --device "$DEVICE" --out "$OUT/intgrad-resnet56" --quiet \
    --set localisation.num_grids=8 --set pixel-removal.num_images=16
"$AB" run --model resnet56 --method occ5,occ9,rise,lime --metric localisation,pixel-removal \
    --device "$DEVICE" --out "$OUT/perturbation-resnet56" --quiet \
    --set localisation.num_grids=4 --set pixel-removal.num_images=8 \
    --set rise.n_masks=1000 --set lime.num_samples=256
"$AB" run --model xs-coda-sq-t1000 --method rise,lime --metric localisation,pixel-removal \
    --device "$DEVICE" --out "$OUT/perturbation-sigmoid" --quiet \
    --set localisation.num_grids=4 --set pixel-removal.num_images=8 \
    --set rise.n_masks=1000 --set lime.num_samples=256
