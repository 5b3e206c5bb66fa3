rule tables:
    input:
        metrics=[cell.file("metrics.json") for cell in grid.train_cells(config)],
        baselines=expand(grid.BASELINE, dataset=config["grid"]["datasets"]),
    output:
        csv=grid.SUMMARY_CSV,
        md=grid.SUMMARY_MD,
    params:
        file=PARAMS_FILE,
        stage=stage_params("tables"),
    log:
        "logs/tables.log",
    benchmark:
        "logs/benchmarks/tables.tsv",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        ENV
    shell:
        "nuwa tables --params {params.file:q} --out-csv {output.csv:q} --out-md {output.md:q} --mem-mb {resources.mem_mb} --mem-rule tables > {log:q} 2>&1"


rule figures:
    input:
        data=grid.PROCESSED,
        saliency=grid.SALIENCY,
        examples=lambda wildcards: [
            grid.Cell(wildcards.dataset, config["figures"]["backbone"], variant, config["seed"], True).file("examples.nc")
            for variant in config["grid"]["variants"]
        ],
    output:
        predictions=grid.PREDICTION_FIGURE,
        saliency=grid.SALIENCY_FIGURE,
    params:
        file=PARAMS_FILE,
        stage=stage_params("figures"),
    log:
        "logs/figures/{dataset}.log",
    benchmark:
        "logs/benchmarks/figures/{dataset}.tsv",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        ENV
    shell:
        "nuwa figures --params {params.file:q} --dataset {wildcards.dataset}"
        " --out-predictions {output.predictions:q} --out-saliency {output.saliency:q} --mem-mb {resources.mem_mb} --mem-rule figures > {log:q} 2>&1"
