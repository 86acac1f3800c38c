"""The report says what this run did, from what it recorded: the model as configured, the filters that dropped."""
from tasks.report import filters_applied, model_description


def test_the_model_card_describes_the_configured_architecture():
    plain = model_description({"depth": 2})
    assert "gated-SiLU" in plain and "exportable to Hugging Face Llama" in plain and "not exportable" not in plain
    odd = model_description({"depth": 2, "activation": "relu2", "qk_norm": True, "logit_softcap": 15.0,
                             "n_kv_heads": 1})
    assert "ReLU² MLP" in odd and "gated-SiLU" not in odd and "RMSNorm on queries and keys" in odd
    assert "soft-capped at 15" in odd and "1 key/value heads for 2 query heads" in odd
    assert "not exportable" in odd and "qk_norm" in odd


def test_the_filter_list_is_the_runs_own_drop_reasons_in_stage_order():
    data = {"stages": [{"stage": s} for s in ("ingest", "extract", "quality", "dedup")],
            "funnel": [{"stage": "quality", "reason": "gopher_too_few_words", "dropped": True},
                       {"stage": "ingest", "reason": "not_html", "dropped": True},
                       {"stage": "quality", "reason": "pii_redacted_docs", "dropped": False},
                       {"stage": "dedup", "reason": "near_duplicate", "dropped": True}]}
    assert filters_applied(data) == ("ingest (not_html); quality (gopher_too_few_words); "
                                     "dedup (near_duplicate)")
    assert filters_applied({"stages": [], "funnel": []}) == "none dropped anything"


def test_report_cells_read_as_numbers_and_times_not_scientific_notation():
    from datetime import datetime, timezone

    from tasks.report_doc import _cell

    assert _cell(37310.0) == "37,310" and _cell(1577000.0) == "1,577,000"  # were 3.731e+04 and 1.577e+06
    assert _cell(12345.678) == "12,345.7" and _cell(0.2398) == "0.2398" and _cell(1.99264) == "1.993"
    assert _cell(datetime(2026, 12, 2, 19, 4, 50, 123456, tzinfo=timezone.utc)) == "2026-12-02 19:04:50"
    assert _cell("2026-12-02 19:04:50.123456+00:00") == "2026-12-02 19:04:50+00:00"
    assert _cell(2e-6) == "2.000e-06" and _cell(float("nan")) == "nan"
