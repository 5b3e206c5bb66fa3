rule saliency:
    input:
        data=grid.PROCESSED,
        model=grid.UPSTREAM_MODEL,
    output:
        grid.SALIENCY,
    params:
        file=PARAMS_FILE,
        stage=stage_params("saliency"),
    log:
        "logs/saliency/{dataset}.log",
    benchmark:
        "logs/benchmarks/saliency/{dataset}.tsv",
    threads: 1
    resources:
        mem_mb=4000,
        gpu=1,
    conda:
        ENV
    shell:
        "nuwa saliency --params {params.file:q} --dataset {wildcards.dataset} --threads {threads}"
        " --data {input.data:q} --model {input.model:q} --out {output:q} --mem-mb {resources.mem_mb} --mem-rule saliency > {log:q} 2>&1"
