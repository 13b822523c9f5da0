#!/usr/bin/env bash
# The reproduction of the CoDA-Nets evaluation on CIFAR-10: run folders in $RUNS, then the store.
#
# Three runs, split by cost so that each uses the largest n that fits the hardware:
#   gradient      inherent, grad, ixg, deeplift, gradcam (one or two backward passes per map)
#   intgrad       intgrad (20 forward + backward passes per map)
#   perturbation  occ5, occ9, rise, lime (hundreds to thousands of forwards per image)
# then the qualitative maps, the store ($STORE: each run's parts replace the store's parts of
# the same model, method and metric) and its figures. The runs share one cache ($RUNS/cache):
# each model classifies the test set once for the grid selection, not once per run. Each run
# resumes where a killed one stopped: re-run this script with the same settings.
# Settings (environment variables):
#   GRIDS / IMAGES                  localisation grids / pixel-removal images, gradient methods
#   INTGRAD_GRIDS / INTGRAD_IMAGES  the same for Integrated Gradients
#   PERTURB_GRIDS / PERTURB_IMAGES  the same for the perturbation methods
#   PERTURB_MODELS                  models of the perturbation run (default: MODELS)
#   EXAMPLE_MODELS, EXAMPLE_COUNT   models and images of the qualitative sheets (Fig. 7, 8)
#   RISE_MASKS, LIME_SAMPLES        RISE masks (paper: 6000) and LIME samples
#   MODELS, DEVICE, RUNS, STORE, AB models, cpu|cuda, run folders, the store, the command
# The paper's protocol is 500 grids and 1024 images for every method (the defaults; use a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

AB=${AB:-attrib-bench}
RUNS=${RUNS:-runs/cifar10}
STORE=${STORE:-results/cifar10}
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
    --metric localisation,localisation-difull,pixel-removal --device "$DEVICE" \
    --out "$RUNS/gradient" --cache "$RUNS/cache" \
    --set localisation.num_grids="$GRIDS" --set localisation-difull.num_grids="$GRIDS" \
    --set pixel-removal.num_images="$IMAGES"

"$AB" run --model "$MODELS" --method intgrad \
    --metric localisation,pixel-removal --device "$DEVICE" --out "$RUNS/intgrad" --cache "$RUNS/cache" \
    --set localisation.num_grids="$INTGRAD_GRIDS" --set pixel-removal.num_images="$INTGRAD_IMAGES"

"$AB" run --model "$PERTURB_MODELS" --method occ5,occ9,rise,lime \
    --metric localisation,pixel-removal --device "$DEVICE" --out "$RUNS/perturbation" --cache "$RUNS/cache" \
    --set localisation.num_grids="$PERTURB_GRIDS" --set pixel-removal.num_images="$PERTURB_IMAGES" \
    --set rise.n_masks="$RISE_MASKS" --set lime.num_samples="$LIME_SAMPLES"

"$AB" store --into "$STORE" "$RUNS/gradient" "$RUNS/intgrad" "$RUNS/perturbation"

for model in ${EXAMPLE_MODELS//,/ }; do
    "$AB" examples --model "$model" --results "$STORE" --device "$DEVICE" \
        --method inherent,ixg,intgrad,gradcam,occ5 --count "$EXAMPLE_COUNT"
done

"$AB" plot --results "$STORE"
