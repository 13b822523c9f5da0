#!/usr/bin/env bash
# The committed reproduction of the CoDA-Nets evaluation on CIFAR-10 (results/cifar10).
#
# Three runs, split by cost so that each uses the largest n that fits the hardware:
#   gradient/      inherent, grad, ixg, deeplift, gradcam (one or two backward passes per map)
#   intgrad/       intgrad (20 forward + backward passes per map)
#   perturbation/  occ5, occ9, rise, lime (hundreds to thousands of forwards per image)
# then the qualitative maps, every figure and the HTML report. The runs share one cache
# ($OUT/cache): each model classifies the test set once for the grid selection, not once per run.
# Each run resumes where a killed one stopped: re-run this script with the same settings.
# Settings (environment variables):
#   GRIDS / IMAGES                  localisation grids / pixel-removal images, gradient methods
#   INTGRAD_GRIDS / INTGRAD_IMAGES  the same for Integrated Gradients
#   PERTURB_GRIDS / PERTURB_IMAGES  the same for the perturbation methods
#   PERTURB_MODELS                  models of the perturbation run (default: MODELS)
#   EXAMPLE_MODELS, EXAMPLE_COUNT   models and images of the qualitative sheets (Fig. 7, 8)
#   RISE_MASKS, LIME_SAMPLES        RISE masks (paper: 6000) and LIME samples (256; LIME's
#                                   quickshift defaults here already work at 32 px)
#   MODELS, DEVICE, OUT, AB         models, cpu|cuda, output folder, the attrib-bench command
# The paper's protocol is 500 grids and 1024 images for every method (the defaults; use a GPU).
# Regenerate the committed figures from the committed tables alone:
#   attrib-bench plot --results results/cifar10 --results results/cifar10-gpu --out results/cifar10/figures
#   attrib-bench report --results results/cifar10 --results results/cifar10-gpu --out results/cifar10/report.html
set -euo pipefail
cd "$(dirname "$0")/.."

AB=${AB:-attrib-bench}
OUT=${OUT:-results/cifar10}
DEVICE=${DEVICE:-cpu}
MODELS=${MODELS:-xs-coda-sq-t10,xs-coda-sq-t100,xs-coda-sq-t1000,resnet56}
GRIDS=${GRIDS:-500}
IMAGES=${IMAGES:-1024}
INTGRAD_GRIDS=${INTGRAD_GRIDS:-$GRIDS}
INTGRAD_IMAGES=${INTGRAD_IMAGES:-$IMAGES}
PERTURB_GRIDS=${PERTURB_GRIDS:-$GRIDS}
PERTURB_IMAGES=${PERTURB_IMAGES:-$IMAGES}
PERTURB_MODELS=${PERTURB_MODELS:-$MODELS}
EXAMPLE_MODELS=${EXAMPLE_MODELS:-$MODELS}
EXAMPLE_COUNT=${EXAMPLE_COUNT:-6}
RISE_MASKS=${RISE_MASKS:-6000}
LIME_SAMPLES=${LIME_SAMPLES:-256}

"$AB" run --model "$MODELS" --method inherent,grad,ixg,deeplift,gradcam \
    --metric localisation,pixel-removal --device "$DEVICE" --out "$OUT/gradient" --cache "$OUT/cache" \
    --set localisation.num_grids="$GRIDS" --set pixel-removal.num_images="$IMAGES"

"$AB" run --model "$MODELS" --method intgrad \
    --metric localisation,pixel-removal --device "$DEVICE" --out "$OUT/intgrad" --cache "$OUT/cache" \
    --set localisation.num_grids="$INTGRAD_GRIDS" --set pixel-removal.num_images="$INTGRAD_IMAGES"

"$AB" run --model "$PERTURB_MODELS" --method occ5,occ9,rise,lime \
    --metric localisation,pixel-removal --device "$DEVICE" --out "$OUT/perturbation" --cache "$OUT/cache" \
    --set localisation.num_grids="$PERTURB_GRIDS" --set pixel-removal.num_images="$PERTURB_IMAGES" \
    --set rise.n_masks="$RISE_MASKS" --set lime.num_samples="$LIME_SAMPLES"

for model in ${EXAMPLE_MODELS//,/ }; do
    "$AB" examples --model "$model" --results "$OUT" --device "$DEVICE" \
        --method inherent,ixg,intgrad,gradcam,occ5 --count "$EXAMPLE_COUNT"
done

"$AB" plot --results "$OUT"
"$AB" report --results "$OUT"
