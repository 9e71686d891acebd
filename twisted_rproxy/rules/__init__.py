"""
Pure HTTP rules: functions and small values of data, no I/O, no reactor,
nothing imported from the rest of the package. The bottom layer (see
C{docs/architecture.rst}).
"""
