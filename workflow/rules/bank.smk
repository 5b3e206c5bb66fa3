rule bank:
    input:
        data=grid.PROCESSED,
        saliency=saliency_input,
    output:
        grid.BANK,
    params:
        file=PARAMS_FILE,
        stage=stage_params("bank"),
        saliency=lambda wildcards, input: f"--saliency {input.saliency}" if input.saliency else "",
    log:
        "logs/bank/{dataset}/{variant}.log",
    benchmark:
        "logs/benchmarks/bank/{dataset}/{variant}.tsv",
    threads: 1
    resources:
        mem_mb=6000,
    conda:
        ENV
    shell:
        "nuwa bank --params {params.file:q} --dataset {wildcards.dataset} --variant {wildcards.variant}"
        " --data {input.data:q} {params.saliency} --out {output:q} --mem-mb {resources.mem_mb} --mem-rule bank > {log:q} 2>&1"
