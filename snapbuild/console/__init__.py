"""The console transport: builds that need no SSH (the runner applies the plan inside the guest and reports
through the console; snapbuild reads the console). See protocol, reader, relay, payload, runner."""
