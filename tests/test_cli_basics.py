def test_version(cli):
    result = cli("--version")
    assert result.code == 0
    assert result.out.startswith("archscale ")


def test_unknown_verb_is_a_usage_error(cli):
    result = cli("no-such-verb")
    assert result.code == 2
    assert "Traceback" not in result.err
