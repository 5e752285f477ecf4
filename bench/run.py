"""headbench's benchmark suite: every figure a ratio measured in one run on this machine.

    python bench/run.py [--quick] [--out DIR] [--sections abcdef] [--input-size 64]

Sections (issue 10, §4), one module each, runnable alone with the same flags but --sections
(e.g. `python bench/section_b_extraction.py --quick`):
  (a) section_a_whole_job: the whole `compare` job vs the naive per-head recipe (backbone
      recomputed every epoch)
  (b) section_b_extraction: extraction img/s: headbench's extractor vs timm's fp32 NCHW eager
      default, other forward paths (channels_last, BN folding, oneDNN, torch.jit, torch.compile,
      bf16, threads, batch sizes), logit agreement, fraction of the machine's measured matmul peak
  (c) section_c_loading: data loading (decode + resize through the DataLoader) vs extraction
  (d) section_d_large_folders: memory and time linearity on 5k / 20k / 100k generated images
      (`compare` in a subprocess, process tree sampled every 0.1 s), cache bytes per image, full
      maps vs pooled cache
  (e) section_e_bf16: bf16 vs fp32 features: test accuracy per head against the seed spread
  (f) section_f_stacked: stacked vs one-at-a-time head training on the default job's cached
      features
  (g) section_g_finetune: the default job with 4 cached augmented views per training image and
      the best head fine-tuned end to end: the change per head, fine-tuned vs frozen,
      fine-tuning img/s
  (h) section_h_onnx: the best head on four CPU engines, extraction through onnxruntime
  (i) section_i_protocol: the training protocol, previous vs default, and the sweep's spread
  (j) section_j_selection: the recommendation across split seeds (previous rule, 1-SE on val,
      1-SE on 5-fold cross-validation), head training with the folds against extraction
  (k) section_k_default_job: the default job's wall time now against the commit before issue 20
  (l) section_l_halving: the sweep with and without successive halving
  (m) section_m_backbones: three backbones in one run against one run per backbone
  (n) section_n_vit: a ViT's token extraction against timm's default forward, its heads
  (o) section_o_patience: early stopping's patience, 3 epochs against 2, in whole default jobs
  (p) section_p_cold_ratio: head training against extraction, cold default jobs in fresh
      processes (patience 2 and 3)

The full run writes bench/RESULTS.md (and <out>/results.json with the raw numbers); --quick and
runs of some sections only write <out>/RESULTS.md unless --results is given. RESULTS.md is
rewritten after every section, so a killed run keeps what it measured. Generated image folders
are kept under <out>/datasets and reused. Nothing here asserts a time: targets are reported.
A later section uses what an earlier one measured in the same run where it can ((b)'s extraction
rates in (c), (e)'s fp32 job in (f)); alone, it measures that itself.
"""
from __future__ import annotations

import harness as H
import section_a_whole_job
import section_b_extraction
import section_c_loading
import section_d_large_folders
import section_e_bf16
import section_f_stacked
import section_g_finetune
import section_h_onnx
import section_i_protocol
import section_j_selection
import section_k_default_job
import section_l_halving
import section_m_backbones
import section_n_vit
import section_o_patience
import section_p_cold_ratio

SECTIONS = {m.KEY: m for m in (section_a_whole_job, section_b_extraction, section_c_loading,
                               section_d_large_folders, section_e_bf16, section_f_stacked,
                               section_g_finetune, section_h_onnx, section_i_protocol,
                               section_j_selection, section_k_default_job,
                               section_l_halving, section_m_backbones, section_n_vit,
                               section_o_patience, section_p_cold_ratio)}


def main() -> None:
    H.main(SECTIONS, __doc__, suite=True)


if __name__ == "__main__":
    main()
