-- The server's schema as version 1 made it (frozen: the upgrade tests start from it).
CREATE TABLE IF NOT EXISTS "cursors" ("service" VARCHAR(255) NOT NULL PRIMARY KEY, "user_id" INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS "jobs" ("id" INTEGER NOT NULL PRIMARY KEY, "user_id" INTEGER NOT NULL, "service" VARCHAR(255) NOT NULL, "status" VARCHAR(255) NOT NULL CHECK (status IN ('Cleaned', 'Completed', 'Failed', 'Invalid', 'Killed', 'Locked', 'Processing', 'Queued', 'Running', 'Submitted', 'Unknown')), "folder" VARCHAR(255) NOT NULL, "dest_id" INTEGER, "dest_instance" VARCHAR(255), "message" TEXT NOT NULL, "created_at" REAL NOT NULL, "updated_at" REAL NOT NULL, "finished_at" REAL);
CREATE INDEX "job_status_service_user_id_id" ON "jobs" ("status", "service", "user_id", "id");
CREATE INDEX "job_status_finished_at" ON "jobs" ("status", "finished_at");
CREATE UNIQUE INDEX "job_folder" ON "jobs" ("folder");
CREATE TABLE IF NOT EXISTS "job_events" ("id" INTEGER NOT NULL PRIMARY KEY, "job_id" INTEGER NOT NULL, "src" VARCHAR(255), "dst" VARCHAR(255) NOT NULL, "at" REAL NOT NULL, "reason" TEXT NOT NULL, FOREIGN KEY ("job_id") REFERENCES "jobs" ("id") ON DELETE CASCADE);
CREATE INDEX "jobevent_job_id" ON "job_events" ("job_id");
CREATE TABLE IF NOT EXISTS "job_transitions" ("src" VARCHAR(255) NOT NULL, "dst" VARCHAR(255) NOT NULL, PRIMARY KEY ("src", "dst"));
CREATE TRIGGER jobs_status_guard BEFORE UPDATE OF status ON jobs WHEN NEW.status IS NOT OLD.status AND NOT EXISTS (SELECT 1 FROM job_transitions WHERE src = OLD.status AND dst = NEW.status) BEGIN SELECT RAISE(ABORT, 'illegal status transition'); END;
PRAGMA user_version = 1;
