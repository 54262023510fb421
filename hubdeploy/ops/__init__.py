"""Operating a site's stack on the engine.

- :mod:`~hubdeploy.ops.stack`: up, status, logs, down (what the CLI calls), starting
  from a site prepared in memory (:mod:`~hubdeploy.ops.prepared`);
- :mod:`~hubdeploy.ops.orchestrator`: what differs between compose
  (:mod:`~hubdeploy.ops.compose`) and swarm (:mod:`~hubdeploy.ops.swarm`, with
  :mod:`~hubdeploy.ops.stackdeploy` for the swarm stack itself);
- :mod:`~hubdeploy.ops.servers`: the notebook servers, as the hub's backends list them;
- :mod:`~hubdeploy.ops.upgrade`, :mod:`~hubdeploy.ops.backup`,
  :mod:`~hubdeploy.ops.restore`, :mod:`~hubdeploy.ops.userlogs` (``logs --user``),
  :mod:`~hubdeploy.ops.smoke_cmd`;
- :mod:`~hubdeploy.ops.engine`: the Docker engine and compose, with argv lists.
"""
