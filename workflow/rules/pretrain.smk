rule pretrain:
    input:
        grid.PROCESSED,
    output:
        model=grid.UPSTREAM_MODEL,
        history=grid.UPSTREAM_HISTORY,
    params:
        file=PARAMS_FILE,
        stage=stage_params("pretrain"),
    log:
        "logs/pretrain/{dataset}.log",
    benchmark:
        "logs/benchmarks/pretrain/{dataset}.tsv",
    threads: 1
    resources:
        mem_mb=4000,
        gpu=1,
    conda:
        ENV
    shell:
        "nuwa pretrain --params {params.file:q} --dataset {wildcards.dataset} --threads {threads}"
        " --data {input:q} --model-out {output.model:q} --history-out {output.history:q} --mem-mb {resources.mem_mb} --mem-rule pretrain > {log:q} 2>&1"
