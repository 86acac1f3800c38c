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
                       {"stage": "ingest", "reason": "record_request", "dropped": True},
                       {"stage": "quality", "reason": "pii_redacted_docs", "dropped": False},
                       {"stage": "dedup", "reason": "near_duplicate", "dropped": True}]}
    assert filters_applied(data) == ("ingest (record_request); quality (gopher_too_few_words); "
                                     "dedup (near_duplicate)")
    assert filters_applied({"stages": [], "funnel": []}) == "none dropped anything"
