"""`seglab study`: a basenet x decoder x grid study from one YAML file, trained once per seed, evaluated,
measured and explained, on this machine or on a SLURM cluster.

The study answers the seed's questions with measured numbers: the error bars of an mIoU (how much comes
from the training seed, the checkpoint chosen among the last K, and the test images; `variance`),
robustness under the ImageNet-C corruptions (`seglab test --corruptions`), and what predicts a good
basenet (ImageNet top-1, params, GFLOPs, a linear probe; `predictors`, `probe`). Its parts:

    plan.py        cells (basenet x decoder x grid point), one job per (cell, seed) and per basenet probe;
                   state.json and the results that make an interrupted study continue where it stopped
    jobs.py        what one job does (train or resume, `seglab test`, `seglab bench`'s measurements)
    launch.py      where jobs run: in-process, N local worker processes, or submitit (local or SLURM)
    variance.py    the nested random-effects decomposition and the smallest detectable difference
    predictors.py  Spearman correlations with bootstrap intervals, and the sentence the report prints
    probe.py       the frozen-basenet linear probe
    results.py     results.csv, cells.csv, results.md, variance.json, predictors.json, plots, report.html
    run.py         `run_study`: plan, launch what is missing, analyse, report

YAML layout (only `basenets` and `decoders` are required); each section is checked by the dataclass of
its command (TrainConfig, TestConfig, BenchConfig, ProbeConfig), so an unknown key or a bad value is an
error naming the file and the key::

    basenets: [resnet18, mobilenet_v2]
    decoders: [fcn8s, fcnw]
    grid: {learnrate: [0.01, 0.003]}                                        # TrainConfig key -> values
    seeds: [0, 1, 2]
    last_k: 3
    train: {dataset: voc, data_root: data/VOCdevkit/VOC2012, iters: 30000}   # TrainConfig keys
    test: {split: val, bootstrap: 1000, corruptions: [all], severities: [1, 3, 5]}   # TestConfig keys
    bench: {size: [512], batch_size: 1, backends: [eager], repeats: 10}     # BenchConfig keys
    probe: {steps: 300, tap: 16}                                            # ProbeConfig keys
"""

from seglab.study.run import read_study, run_study

__all__ = ["read_study", "run_study"]
