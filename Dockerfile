# hypergate in a container:  docker build -t hypergate .
#   docker run --rm hypergate --new
#   docker run -d -u root -v /var/run/docker.sock:/var/run/docker.sock hypergate \
#       --router <secret> --docker --provider --network hypergatenet
# The same image runs the gateway's helper containers in Docker mode
# (`python -m hypergate.docker.forwarder`, a plain relay that holds no secret).
FROM python:3.11-slim

# A provider on the same host must not advertise hypergate's own containers.
LABEL hypergate.EXCLUDE="true"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY hypergate ./hypergate
RUN pip install --no-cache-dir . \
    && rm -rf /src \
    && useradd --system --no-create-home --shell /usr/sbin/nologin hypergate

WORKDIR /
# Docker mode needs the daemon's socket, usually root-only: run those with `-u root`
# (as the README's examples do) or add this user to the socket's group.
USER hypergate
ENTRYPOINT ["hypergate"]
