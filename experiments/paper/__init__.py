"""Studies behind the paper's figures and calibrations."""
