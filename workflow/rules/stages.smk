# Every rule of the pipeline, made from the stage table (nuwa/stages.py), which dvc.yaml is also
# generated from: the inputs, outputs, params keys, resources and command of a stage are written
# there once. A rule's `params.stage` is the JSON of the params keys the stage depends on, so a
# change to any of them (and to nothing else) reruns its jobs; `params.command` is the stage's
# command for the job, the one DVC runs too.
from nuwa.stages import STAGES, input_files, log_path, snakemake_command


localrules:
    validate,


for stage in STAGES.values():

    rule:
        name:
            stage.name
        input:
            unpack(lambda wildcards, name=stage.name: input_files(name, config, dict(wildcards))),
        output:
            **{
                name: (
                    report(
                        spec.path,
                        caption=f"../report/{spec.caption}.rst",
                        category=spec.category,
                        subcategory=spec.subcategory or None,
                    )
                    if spec.caption
                    else (spec.files(config) if spec.files else spec.path)
                )
                for name, spec in stage.outputs.items()
            },
        params:
            file=JOB_PARAMS_FILE,
            stage=stage_params(stage.name),
            command=lambda wildcards, name=stage.name: snakemake_command(name, wildcards),
            threads=threads_per_process,
            rule=stage.name,
        log:
            log_path(stage.name),
        benchmark:
            log_path(stage.name, ".tsv", "logs/benchmarks")
        threads: cell_gpus if stage.gpu and "backbone" in stage.axes else 1
        resources:
            mem_mb=stage.mem_mb,
            gpu=(cell_gpus if "backbone" in stage.axes else 1) if stage.gpu else 0,
        conda:
            ENV
        # a literal: a rule made in a loop evaluates its shell expression when the job runs
        shell:
            "{params.command} --params {params.file:q} --threads {params.threads}"
            " --mem-mb {resources.mem_mb} --mem-rule {params.rule} > {log:q} 2>&1"
