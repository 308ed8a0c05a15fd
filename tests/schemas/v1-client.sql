-- The client's schema as version 1 made it (frozen: the upgrade tests start from it).
CREATE TABLE IF NOT EXISTS "instance" ("id" VARCHAR(255) NOT NULL PRIMARY KEY);
CREATE TABLE IF NOT EXISTS "payloads" ("id" INTEGER NOT NULL PRIMARY KEY, "status" VARCHAR(255) NOT NULL CHECK (status IN ('Cleaned', 'Completed', 'Failed', 'Invalid', 'Killed', 'Prepared', 'Running')), "job_key" VARCHAR(255), "walltime" REAL, "deadline" REAL, "pid" INTEGER NOT NULL, "started_at" REAL, "killed" INTEGER NOT NULL, "exit_code" INTEGER, "message" TEXT NOT NULL, "created_at" REAL NOT NULL, "updated_at" REAL NOT NULL, "finished_at" REAL);
CREATE UNIQUE INDEX "payload_job_key" ON "payloads" ("job_key");
CREATE INDEX "payload_status_finished_at" ON "payloads" ("status", "finished_at");
CREATE TABLE IF NOT EXISTS "payload_events" ("id" INTEGER NOT NULL PRIMARY KEY, "payload_id" INTEGER NOT NULL, "src" VARCHAR(255), "dst" VARCHAR(255) NOT NULL, "at" REAL NOT NULL, "reason" TEXT NOT NULL, FOREIGN KEY ("payload_id") REFERENCES "payloads" ("id") ON DELETE CASCADE);
CREATE INDEX "payloadevent_payload_id" ON "payload_events" ("payload_id");
CREATE TABLE IF NOT EXISTS "payload_transitions" ("src" VARCHAR(255) NOT NULL, "dst" VARCHAR(255) NOT NULL, PRIMARY KEY ("src", "dst"));
CREATE TRIGGER payloads_status_guard BEFORE UPDATE OF status ON payloads WHEN NEW.status IS NOT OLD.status AND NOT EXISTS (SELECT 1 FROM payload_transitions WHERE src = OLD.status AND dst = NEW.status) BEGIN SELECT RAISE(ABORT, 'illegal status transition'); END;
PRAGMA user_version = 1;
