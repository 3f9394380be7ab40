"""The OpenAPI document lists the job and consortium endpoints with schemas generated from the models."""


def test_spec_has_jobs_and_consortia(client):
    spec = client.get("/openapi.json").get_json()
    schemas = spec["components"]["schemas"]
    assert {"BatchJobRequest", "Job", "ConsortiumRequest", "ConsortiumResponse"} <= set(schemas)
    post = spec["paths"]["/v1/jobs/batch-match"]["post"]
    assert "202" in post["responses"] and post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("BatchJobRequest")
    assert set(spec["paths"]["/v1/jobs/{id}/result"]["get"]["responses"]) == {"200", "401", "403", "404", "409", "429"}
    assert "required_types" in schemas["ConsortiumRequest"]["properties"]
    assert "200" in spec["paths"]["/v1/consortia"]["post"]["responses"]


def test_spec_documents_safe_retries(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    for path in ("/v1/organisations", "/v1/challenges/bulk", "/v1/jobs/batch-match", "/v1/keys"):
        post = paths[path]["post"]
        assert "Idempotency-Key" in {p["name"] for p in post.get("parameters", [])} and "409" in post["responses"]
    for method in ("put", "patch", "delete"):
        op = paths["/v1/organisations/{id}"][method]
        assert "If-Match" in {p["name"] for p in op["parameters"]} and "412" in op["responses"]
    read = paths["/v1/challenges/{id}"]["get"]
    assert "ETag" in read["responses"]["200"]["headers"] and "304" in read["responses"]
    assert "ETag" in paths["/v1/organisations"]["post"]["responses"]["201"]["headers"]
