{{/* Name of the chart, overridable. */}}
{{- define "flux-bff.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, with the chart name unless it already has it. */}}
{{- define "flux-bff.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "flux-bff.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flux-bff.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flux-bff.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "flux-bff.labels" -}}
helm.sh/chart: {{ include "flux-bff.chart" . }}
{{ include "flux-bff.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "flux-bff.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flux-bff.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The one Secret holding the recovery secret, shared by every replica. */}}
{{- define "flux-bff.recoverySecretName" -}}
{{- if .Values.recovery.secret.existingSecret }}
{{- .Values.recovery.secret.existingSecret }}
{{- else }}
{{- printf "%s-recovery" (include "flux-bff.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The recovery secret the chart's own Secret holds (recovery.secret.existingSecret empty):
recovery.secret.value, else the one the cluster already holds (kept across upgrades), else a
new random one. Resolved once per render and kept beside the values, so that the Secret and
the pod template's checksum of it (deployment.yaml) see the same random value, whichever of
the two templates renders first.
*/}}
{{- define "flux-bff.recoverySecretValue" -}}
{{- $rs := .Values.recovery.secret }}
{{- if not (hasKey $rs "resolvedValue") }}
{{- $value := $rs.value }}
{{- if not $value }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "flux-bff.recoverySecretName" .) }}
{{- if and $existing $existing.data (hasKey $existing.data $rs.key) }}
{{- $value = index $existing.data $rs.key | b64dec }}
{{- else }}
{{- $value = randAlphaNum 64 }}
{{- end }}
{{- end }}
{{- $_ := set $rs "resolvedValue" $value }}
{{- end }}
{{- $rs.resolvedValue }}
{{- end }}

{{/* Seconds Kubernetes waits after SIGTERM is due: above the preStop sleep plus the gateway's own deadline. */}}
{{- define "flux-bff.terminationGracePeriodSeconds" -}}
{{- $l := .Values.lifecycle }}
{{- add (int $l.preStopSleepSeconds) (int $l.shutdownDeadlineSeconds) (int $l.terminationMarginSeconds) }}
{{- end }}

{{/*
A value as the text of an environment variable. Helm reads the numbers of a values file (and of
--set-json) as float64, which toString and quote write in scientific notation from 1e6 on
("4.194304e+06"), and the gateway refuses that for an integer setting: toJson writes a float64
in plain decimal (4194304, 1.5), integers and strings stay as they are.
*/}}
{{- define "flux-bff.envValue" -}}
{{- if kindIs "float64" . }}{{ toJson . | quote }}{{ else }}{{ toString . | quote }}{{ end }}
{{- end }}
