-- Four eyes: whose approvals an environment counts (supplier, customer or
-- both) and whether a commit's author may approve it; and, per approval,
-- the approver's organisation ('supplier' or the customer's id).
ALTER TABLE policies ADD COLUMN approvers_from TEXT NOT NULL DEFAULT 'supplier';
ALTER TABLE policies ADD COLUMN author_may_approve INTEGER NOT NULL DEFAULT 0;
ALTER TABLE approvals ADD COLUMN org TEXT NOT NULL DEFAULT 'supplier';
