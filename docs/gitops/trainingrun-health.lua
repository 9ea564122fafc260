-- Argo CD health check of a pulse.dev TrainingRun (resource.customizations.health.pulse.dev_TrainingRun).
-- A run is Progressing until the operator has seen its current spec and while it starts
-- and trains, Healthy once it succeeded, Degraded once it failed, Suspended while
-- spec.suspend is true.
local hs = {status = "Progressing", message = "waiting for the operator"}
if obj.status == nil then
  return hs
end
if obj.status.message ~= nil then
  hs.message = obj.status.message
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "waiting for the operator to observe generation " .. generation
  return hs
end
local phase = obj.status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Suspended" then
  hs.status = "Suspended"
end
return hs
