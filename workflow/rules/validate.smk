localrules:
    validate,


rule validate:
    """The marker DVC's first stage writes (common.smk validated params.yaml when Snakemake parsed the workflow);
    built here too so that both tools leave the same files."""
    output:
        grid.PARAMS_OK,
    params:
        file=PARAMS_FILE,
        stage=lambda wildcards: json.dumps(config, sort_keys=True),
    log:
        "logs/validate.log",
    conda:
        ENV
    shell:
        "nuwa validate --params {params.file:q} --out {output:q} > {log:q} 2>&1"
