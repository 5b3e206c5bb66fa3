# NuwaDynamics pipeline: params.yaml -> ingest -> pretrain -> saliency -> bank -> train -> tables.
# Run: snakemake --cores all   (see README.md; the same stages run under `dvc repro`)

# params.yaml (configfile) is read and validated in common.smk, before anything else
include: "workflow/rules/common.smk"
include: "workflow/rules/validate.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/saliency.smk"
include: "workflow/rules/bank.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/tables.smk"


rule all:
    default_target: True
    input:
        all_targets(),
