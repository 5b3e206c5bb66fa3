# One rule for the primary seed (params `seed`, files in the cell's folder) and one for each
# replicate seed (grid.replicate_seeds, files in a seed{N}/ subfolder); the same command (RULE:
# the rule's name, which `nuwa --mem-mb` names when the job exceeds its declared memory).
TRAIN_COMMAND = (
    "nuwa train --params {params.file:q} --dataset {wildcards.dataset} --backbone {wildcards.backbone}"
    " --variant {wildcards.variant} --seed {params.seed} --threads {params.threads} --data {input.data:q}"
    " --bank {input.bank:q} {params.upstream} --out-dir {params.out_dir:q} --mem-mb {resources.mem_mb} --mem-rule RULE > {log:q} 2>&1"
)


rule train:
    input:
        data=grid.PROCESSED,
        bank=grid.BANK,
        upstream=upstream_input,
    output:
        **run_files("{dataset}", "{backbone}", "{variant}", config["seed"], True),
    params:
        file=PARAMS_FILE,
        stage=stage_params("train"),
        upstream=lambda wildcards, input: f"--upstream {input.upstream}" if input.upstream else "",
        seed=config["seed"],
        out_dir=grid.RUN_DIR,
        threads=threads_per_process,
    log:
        "logs/train/{dataset}/{backbone}/{variant}.log",
    benchmark:
        "logs/benchmarks/train/{dataset}/{backbone}/{variant}.tsv",
    threads: cell_gpus  # one CPU thread per training process
    resources:
        mem_mb=6000,
        gpu=cell_gpus,
    conda:
        ENV
    shell:
        TRAIN_COMMAND.replace("RULE", "train")


rule train_replicate:
    input:
        data=grid.PROCESSED,
        bank=grid.BANK,
        upstream=upstream_input,
    output:
        **run_files("{dataset}", "{backbone}", "{variant}", "{seed}", False),
    params:
        file=PARAMS_FILE,
        stage=stage_params("train"),
        upstream=lambda wildcards, input: f"--upstream {input.upstream}" if input.upstream else "",
        seed=lambda wildcards: int(wildcards.seed),
        out_dir=grid.REPLICATE_DIR,
        threads=threads_per_process,
    log:
        "logs/train/{dataset}/{backbone}/{variant}/seed{seed}.log",
    benchmark:
        "logs/benchmarks/train/{dataset}/{backbone}/{variant}/seed{seed}.tsv",
    threads: cell_gpus  # one CPU thread per training process
    resources:
        mem_mb=6000,
        gpu=cell_gpus,
    conda:
        ENV
    shell:
        TRAIN_COMMAND.replace("RULE", "train_replicate")
