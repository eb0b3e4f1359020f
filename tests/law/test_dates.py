"""Strict date parsing to decimal years."""

import datetime as dt

import pytest

from moorelab.errors import DataError
from moorelab.law.dates import decimal_year, parse_date, parse_dates, year_to_date


def test_decimal_year_values():
    assert decimal_year(dt.date(2024, 1, 1)) == 2024.0
    assert decimal_year(dt.date(2024, 7, 2)) == pytest.approx(2024.5)  # day 183 of 366
    assert decimal_year(dt.date(2023, 7, 2)) == pytest.approx(2023 + 182 / 365)
    assert year_to_date(2024.5) == dt.date(2024, 7, 2)


def test_parse_dates_strict_and_names_row():
    ys = parse_dates(["2020-01-01", "2021-01-01"], file="f.csv", field="Publication date",
                     rows=[2, 3])
    assert list(ys) == [2020.0, 2021.0]
    with pytest.raises(DataError, match=r"f\.csv row 3, field 'Publication date'.*'2021/01/01'"):
        parse_dates(["2020-01-01", "2021/01/01"], file="f.csv", field="Publication date",
                    rows=[2, 3])
    with pytest.raises(DataError, match="row 7.*missing date"):
        parse_date("", file="f.csv", row=7)
    with pytest.raises(DataError, match="2021-02-30"):
        parse_date("2021-02-30")
    with pytest.raises(DataError):
        parse_date("2021-1-5x")


def test_parse_date_column_tells_other_formats_from_non_dates():
    from moorelab.law.dates import formats_matching, parse_date_column

    assert formats_matching("05/01/2023") == ("%d/%m/%Y", "%m/%d/%Y")
    assert formats_matching("2023") == ("%Y",)
    assert formats_matching("5") == ()  # strptime's %Y would take it; it is no date
    dates, drops = parse_date_column(["2021-03-01", "", "soon", "2021-02-30", "5"],
                                     [2, 3, 4, 5, 6], file="f.csv", field="day")
    assert dates == [dt.date(2021, 3, 1), None, None, None, None]
    assert drops == {3: "day missing", 4: "day unparseable as %Y-%m-%d ('soon')",
                     5: "day unparseable as %Y-%m-%d ('2021-02-30')",
                     6: "day unparseable as %Y-%m-%d ('5')"}
    with pytest.raises(DataError, match=r"f\.csv, column 'day': mixed date formats: row 2 "
                                        r"'2021-03-01' is %Y-%m-%d, but 1 row\(s\) are dates "
                                        r"in another format: row 3 '2021' \(reads as %Y; "
                                        r"1 row\(s\) like it\)"):
        parse_date_column(["2021-03-01", "2021"], [2, 3], file="f.csv", field="day")
