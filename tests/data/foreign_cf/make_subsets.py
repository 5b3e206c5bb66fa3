"""How the two iris-sample-data files here were cut (run once; kept for the record, not by the tests).

    pip download --no-deps iris-sample-data==2.5.2 -d /tmp/x && unzip /tmp/x/*.whl -d /tmp/x
    python tests/data/foreign_cf/make_subsets.py /tmp/x/iris_sample_data/sample_data

Copies with netCDF4, variable by variable: the same dimensions, variables, types, attributes
(calendar, units, _FillValue, grid mapping) and raw values, sliced along y/x (latitude/longitude)
only (every time step kept); zlib level 4 so that the copies stay small.
"""

import sys
from pathlib import Path

import netCDF4

CUTS = {  # file: {dimension: slice}
    "A1B_north_america.nc": {"latitude": slice(12, 24), "longitude": slice(16, 32)},
    "ostia_monthly.nc": {"longitude": slice(0, 60)},
    "toa_brightness_stereographic.nc": {"y": slice(20, 60), "x": slice(32, 80)},
}


def copy(source: Path, target: Path, cut: dict) -> None:
    with netCDF4.Dataset(source) as src, netCDF4.Dataset(target, "w", format="NETCDF4") as out:
        out.setncatts({k: src.getncattr(k) for k in src.ncattrs()})
        for name, dim in src.dimensions.items():
            size = len(range(*cut[name].indices(len(dim)))) if name in cut else len(dim)
            out.createDimension(name, None if dim.isunlimited() else size)
        for name, var in src.variables.items():
            attrs = {k: var.getncattr(k) for k in var.ncattrs()}
            fill = attrs.pop("_FillValue", None)
            new = out.createVariable(name, var.dtype, var.dimensions, zlib=var.ndim > 0, complevel=4,
                                     fill_value=fill if fill is not None else False)
            new.setncatts(attrs)
            var.set_auto_maskandscale(False)
            new.set_auto_maskandscale(False)
            index = tuple(cut.get(d, slice(None)) for d in var.dimensions)
            new[...] = var[index] if var.ndim else var.getValue()


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    for name, cut in CUTS.items():
        copy(folder / name, Path(__file__).with_name(name.replace(".nc", "_subset.nc")), cut)
