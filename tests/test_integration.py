"""Server and client apps talking real HTTP on loopback, their tasks running, real run.sh scripts."""

import io
import zipfile

from tests.conftest import job_status, script, services, upload, wait_for


async def test_job_goes_from_queued_to_completed_and_its_zip_downloads(nodes):
    client = nodes("client", tasks=True)
    server = nodes("server", tasks=True, **services(client))
    code, body = await upload(server, script("echo hello > out.txt\necho to the log\n"))
    assert (code, body["status"], body["message"]) == (201, "Queued", "Job successfully uploaded")
    await wait_for(lambda: job_status(body["id"]) == "Completed")
    response = await server.fetch(f"/download/{body['id']}")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.body))
    assert archive.read("out.txt") == b"hello\n"
    assert archive.read("run.log") == b"to the log\n"
    assert "run.sh" in archive.namelist()
