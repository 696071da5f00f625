# Sourced by the LoRA benchmarks (bench-lora.sh, bench-lora-prefix.sh): the made model and its
# rank-$RANK adapter they serve, made once under /tmp/strata-models. Sets STRATA, M (model), A
# (adapter) and dev (the device flags); env STRATA, SIZE (small), DEVICE (cpu; cuda for the bf16
# runner), RANK (16).
STRATA=${STRATA:-target/release/strata}
SIZE=${SIZE:-small}; DEVICE=${DEVICE:-cpu}; RANK=${RANK:-16}
M=/tmp/strata-models/lora-bench-$SIZE; A=$M-a1
dtype=f32; [ "$DEVICE" = cuda ] && dtype=bf16
[ -f "$M/config.json" ] || "$STRATA" make-model --out "$M" --size "$SIZE" --dtype $dtype > /dev/null || exit 1
[ -f "$A/adapter_config.json" ] || "$STRATA" make-model --out "$A" --lora-for "$M" --lora-rank "$RANK" --seed 1 > /dev/null || exit 1
dev=(); [ "$DEVICE" = cpu ] && dev=(--device cpu)
