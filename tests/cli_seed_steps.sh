#!/bin/sh
# The recipe README's data preparation, step by step as a new user runs it, on a fake
# ImageNet (3 synsets, 12 training and 6 validation JPEGs, packed in tar files the way
# ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar are), with `vit prep` in place of
# preprocess_imagenet.py and a local copy in place of the label file's download; then
# `vit train` on the layout that leaves, which is vit's default --dataset_dir under
# IMAGENET_HOME=/data/tensorflow.
. "$(dirname "$0")/lib.sh"
FX=$(pwd)/tests/fixtures/evalcrop_tf
case "$VIT" in /*) ;; *) VIT=$(pwd)/$VIT ;; esac  # the steps cd around

# The downloads: ILSVRC2012_img_train.tar holds one <synset>.tar per class, each holding
# <synset>_<n>.JPEG; ILSVRC2012_img_val.tar holds ILSVRC2012_val_<8 digits>.JPEG. The
# validation synsets, one per line in file-name order, stand in for the downloaded list.
dl="$tmp/downloads"
mkdir -p "$dl/pack/train" "$dl/pack/val"
set -- tie_97x64 portrait_61x150 large_300x200 progressive_290x213 gray_120x90 square_45x45
k=0
for syn in n01440764 n01443537 n01484850; do
    mkdir "$dl/pack/$syn"
    for i in 1 2 3 4; do
        k=$((k + 1))
        eval "src=\${$((k % 6 + 1))}"
        cp "$FX/$src.jpg" "$dl/pack/$syn/${syn}_$i.JPEG"
    done
    (cd "$dl/pack/$syn" && tar cf "$dl/pack/train/$syn.tar" ./*.JPEG)
done
: >"$dl/synset_labels.txt"
for i in 1 2 3 4 5 6; do
    eval "src=\${$i}"
    cp "$FX/$src.jpg" "$dl/pack/val/ILSVRC2012_val_0000000$i.JPEG"
    case $i in 1 | 4) syn=n01484850 ;; 2 | 5) syn=n01440764 ;; *) syn=n01443537 ;; esac
    echo "$syn" >>"$dl/synset_labels.txt"
done
(cd "$dl/pack/train" && tar cf "$dl/ILSVRC2012_img_train.tar" ./*.tar)
(cd "$dl/pack/val" && tar cf "$dl/ILSVRC2012_img_val.tar" ./*.JPEG)
check "fake ILSVRC2012 tar files made" $?

# The README's commands, in its order (from "export IMAGENET_HOME" to preprocess_imagenet.py).
(
    set -e
    cd "$dl"
    export IMAGENET_HOME="$tmp/data/tensorflow"
    mkdir -p $IMAGENET_HOME/validation
    mkdir -p $IMAGENET_HOME/train
    tar xf ILSVRC2012_img_val.tar -C $IMAGENET_HOME/validation
    tar xf ILSVRC2012_img_train.tar -C $IMAGENET_HOME/train
    cd $IMAGENET_HOME/train
    for f in *.tar; do
      d=`basename $f .tar`
      mkdir $d
      tar xf $f -C $d
    done
    cd $IMAGENET_HOME
    rm $IMAGENET_HOME/train/*.tar # optional
    cp "$dl/synset_labels.txt" synset_labels.txt  # wget -O synset_labels.txt <its URL>
    "$VIT" prep \
      --raw_data_dir=$IMAGENET_HOME \
      --local_scratch_dir=$IMAGENET_HOME/imagenet/tf_records
) >"$tmp/prep.out" 2>"$tmp/prep.err"
check "README steps with vit prep succeed: $(tail -n 1 "$tmp/prep.err")" $?
# The default 1024 and 128 shards are capped at the image counts (no empty shards).
grep -q "wrote 12 train images in 12 shards, 6 validation images in 6 shards" "$tmp/prep.out"
check "prep reads synset_labels.txt: $(tail -n 1 "$tmp/prep.out")" $?
out="$tmp/data/tensorflow/imagenet/tf_records"
[ -f "$out/train/train-00011-of-00012" ] && [ -f "$out/validation/validation-00005-of-00006" ] &&
    [ "$(ls "$out/train" | wc -l)" -eq 12 ]
check "shards in the recipe's layout: train/train-NNNNN-of-00012, validation/validation-NNNNN-of-00006" $?

# The same label file is still found when the optional `rm train/*.tar` is skipped (the
# per-class tar files then sit beside the class folders).
mkdir -p "$tmp/keep"
cp -r "$tmp/data/tensorflow/train" "$tmp/data/tensorflow/validation" "$tmp/keep/"
cp "$dl/pack/train/"*.tar "$tmp/keep/train/"
cp "$dl/synset_labels.txt" "$tmp/keep/"
expect_ok "prep with the per-class tar files left in train/" prep --raw_data_dir="$tmp/keep" \
    --local_scratch_dir="$tmp/keep/out" --train_shards 2 --val_shards 1
grep -q "wrote 12 train images in 2 shards, 6 validation images in 1 shards" "$tmp/out"
check "the tar files are not taken for images: $(tail -n 1 "$tmp/out")" $?

# With neither label file, the error names both.
rm "$tmp/keep/synset_labels.txt"
expect_error "no label file" "synset_labels.txt or --val_labels" prep --raw_data_dir="$tmp/keep" \
    --local_scratch_dir="$tmp/keep/out2"

# vit's default --dataset_dir is where these steps put the shards for IMAGENET_HOME=/data/tensorflow.
"$VIT" train --help | grep -q -- "--dataset_dir.*\[/data/tensorflow/imagenet/tf_records\]"
check "the default --dataset_dir is \$IMAGENET_HOME/imagenet/tf_records for the README's IMAGENET_HOME" $?

# Train a tiny model for two steps on them, with validation, the recipe's shard prefixes.
"$VIT" train --dataset_dir "$out" --model ViT-Ti_8 --image_size 32 --hidden_size 32 --num_layers 1 \
    --num_heads 2 --mlp_dim 64 --from_scratch --batch_size 4 --grad_accum_steps 1 --epochs 1 \
    --steps_per_epoch 2 --validation_steps 1 --threads 2 --seed 3 --save_dir "" --log_dir "" \
    --cache_dir "$tmp/cache" --json >"$tmp/train.json" 2>"$tmp/train.err"
check "vit train on the prepared shards: $(tail -n 1 "$tmp/train.err")" $?
top1=$(json_field "$tmp/train.json" val_top1)
[ -n "$top1" ]
check "training validated on the validation shards (val_top1 $top1)" $?
finish cli_seed_steps
