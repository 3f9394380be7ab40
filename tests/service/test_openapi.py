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
