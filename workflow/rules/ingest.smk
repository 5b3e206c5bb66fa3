rule ingest:
    input:
        dataset_source,
    output:
        grid.PROCESSED,
    params:
        file=PARAMS_FILE,
        stage=stage_params("ingest"),
    log:
        "logs/ingest/{dataset}.log",
    benchmark:
        "logs/benchmarks/ingest/{dataset}.tsv",
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        ENV
    shell:
        "nuwa ingest --params {params.file:q} --dataset {wildcards.dataset} --threads {threads}"
        " --out {output:q} --mem-mb {resources.mem_mb} --mem-rule ingest > {log:q} 2>&1"


rule baseline:
    input:
        grid.PROCESSED,
    output:
        grid.BASELINE,
    params:
        file=PARAMS_FILE,
        stage=stage_params("baseline"),
    log:
        "logs/baseline/{dataset}.log",
    benchmark:
        "logs/benchmarks/baseline/{dataset}.tsv",
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        ENV
    shell:
        "nuwa baseline --params {params.file:q} --dataset {wildcards.dataset} --threads {threads}"
        " --data {input:q} --out {output:q} --mem-mb {resources.mem_mb} --mem-rule baseline > {log:q} 2>&1"
