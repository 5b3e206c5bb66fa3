# NuwaDynamics pipeline: params.yaml -> ingest -> pretrain -> saliency -> bank -> train -> tables.
# Run: snakemake --cores all   (see README.md; the same stages run under `dvc repro`)
# The stages are defined once, in nuwa/stages.py: rules/stages.smk makes a rule of each, and
# dvc.yaml is generated from the same table (`nuwa dvc-yaml`).

# params.yaml (configfile) is read and validated in common.smk, before anything else
include: "workflow/rules/common.smk"
include: "workflow/rules/stages.smk"


# `snakemake --report report.html`: every table and figure with a caption that says how to read it
report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_targets(),
