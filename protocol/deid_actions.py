"""What the Annex E options change, and the node's own choices on top of Table E.1-1.

Table E.1-1 itself (the Basic Profile's action for about 600 attributes) comes from a maintained library
(meshnode.study.annex_e_table). This table lists the rows an Annex E option changes (Retain Patient
Characteristics, Retain Device Identity, Clean Descriptors, Clean Structured Content: keyword, basic
action, the option, the action under it), and the rows where the node's action differs from the
library's reading or that the library's edition lacks. It is consulted first. Dates, times, person
names, UIDs, private attributes, curves and overlays are handled by VR or group in
meshnode.study.deidentify (a superset of their Table E.1-1 rows). dicognito (the library the
de-identifier drives) does not know the options and keeps descriptions, comments, patient
characteristics and device identifiers as they are.

Actions (PS3.15 E.1.1): X remove, Z empty, D dummy value (dicognito's or a keyed pseudonym), K keep,
C clean (keep only when it carries none of the patient's identifying values, else empty).
"""

from __future__ import annotations

from enum import Enum

from protocol.deid import DeidOption


class Action(str, Enum):
    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    KEEP = "K"
    CLEAN = "C"


_X, _Z, _D, _K, _C = Action.REMOVE, Action.EMPTY, Action.DUMMY, Action.KEEP, Action.CLEAN
_PAT = DeidOption.RETAIN_PATIENT_CHARACTERISTICS
_DEV = DeidOption.RETAIN_DEVICE_IDENTITY
_DESC = DeidOption.CLEAN_DESCRIPTORS
_SC = DeidOption.CLEAN_STRUCTURED_CONTENT

#: keyword -> (basic action, option, action under that option). Composite actions of the table (X/Z,
#: X/D, Z/D, X/Z/D) are taken as their least destructive part that carries no original value (Z or D),
#: so the output stays a valid instance.
TABLE: dict[str, tuple[Action, DeidOption | None, Action | None]] = {
    # patient identity (IDs are keyed pseudonyms; the rest removed)
    "PatientID": (_D, None, None),
    "OtherPatientIDs": (_X, None, None),
    "OtherPatientIDsSequence": (_X, None, None),
    "OtherPatientNames": (_X, None, None),
    "PatientBirthName": (_X, None, None),
    "PatientMotherBirthName": (_X, None, None),
    "PatientAddress": (_X, None, None),
    "PatientTelephoneNumbers": (_X, None, None),
    "PatientTelecomInformation": (_X, None, None),
    "PatientInsurancePlanCodeSequence": (_X, None, None),
    "PatientPrimaryLanguageCodeSequence": (_X, None, None),
    "PatientReligiousPreference": (_X, None, None),
    "PatientBirthDate": (_Z, None, None),
    "PatientBirthTime": (_X, None, None),
    "PatientBirthDateInAlternativeCalendar": (_X, None, None),
    "PatientDeathDateInAlternativeCalendar": (_X, None, None),
    "IssuerOfPatientID": (_X, None, None),
    "IssuerOfPatientIDQualifiersSequence": (_X, None, None),
    "MedicalRecordLocator": (_X, None, None),
    "MilitaryRank": (_X, None, None),
    "BranchOfService": (_X, None, None),
    "Occupation": (_X, None, None),
    "RegionOfResidence": (_X, None, None),
    "CountryOfResidence": (_X, None, None),
    "PersonAddress": (_X, None, None),
    "PersonTelephoneNumbers": (_X, None, None),
    "InstitutionAddress": (_X, None, None),
    "ReferringPhysicianAddress": (_X, None, None),
    "ReferringPhysicianTelephoneNumbers": (_X, None, None),
    "InstitutionName": (_Z, None, None),
    "InstitutionalDepartmentName": (_X, None, None),
    "InstitutionCodeSequence": (_X, None, None),
    "ResponsibleOrganization": (_X, None, None),
    "ResponsiblePerson": (_X, None, None),
    "AccessionNumber": (_Z, None, None),
    "StudyID": (_Z, None, None),
    "AdmissionID": (_X, None, None),
    "IssuerOfAdmissionIDSequence": (_X, None, None),
    "ServiceEpisodeID": (_X, None, None),
    "PerformedProcedureStepID": (_X, None, None),
    "RequestedProcedureID": (_X, None, None),
    "ScheduledProcedureStepID": (_X, None, None),
    "PlacerOrderNumberImagingServiceRequest": (_X, None, None),
    "FillerOrderNumberImagingServiceRequest": (_X, None, None),
    "ReferencedPatientSequence": (_X, None, None),
    "ReferencedStudySequence": (_X, None, None),
    "ReferencedPerformedProcedureStepSequence": (_X, None, None),
    "RequestAttributesSequence": (_X, None, None),
    "CurrentPatientLocation": (_X, None, None),
    "PatientInstitutionResidence": (_X, None, None),
    "ReferencedPatientPhotoSequence": (_X, None, None),
    "ClinicalTrialSponsorName": (_Z, None, None),
    "ClinicalTrialSubjectID": (_Z, None, None),
    "ClinicalTrialSubjectReadingID": (_Z, None, None),
    "ClinicalTrialSiteName": (_Z, None, None),
    "ClinicalTrialSiteID": (_Z, None, None),
    "ClinicalTrialProtocolID": (_Z, None, None),
    "OrderCallbackPhoneNumber": (_X, None, None),
    "OrderEnteredBy": (_X, None, None),
    "OrderEntererLocation": (_X, None, None),
    "TextString": (_X, None, None),
    "DigitalSignaturesSequence": (_X, None, None),
    "MACParametersSequence": (_X, None, None),
    "OriginalAttributesSequence": (_X, None, None),
    "ModifiedAttributesSequence": (_X, None, None),
    "DataSetTrailingPadding": (_X, None, None),
    "IconImageSequence": (_X, None, None),
    "VerifyingObserverSequence": (_X, None, None),
    "AuthorObserverSequence": (_X, None, None),
    "ParticipantSequence": (_X, None, None),
    "ActualHumanPerformersSequence": (_X, None, None),
    "PixelDataProviderURL": (_X, None, None),
    "Arbitrary": (_X, None, None),
    "TextComments": (_X, None, None),
    "TimezoneOffsetFromUTC": (_X, None, None),
    "InsurancePlanIdentification": (_X, None, None),
    "ConfidentialityConstraintOnPatientDataDescription": (_X, None, None),
    "PatientTransportArrangements": (_X, None, None),
    "PreMedication": (_X, None, None),
    "RequestedProcedureLocation": (_X, None, None),
    "RequestingService": (_X, None, None),
    "IssuerOfAdmissionID": (_X, None, None),
    "IssuerOfServiceEpisodeID": (_X, None, None),
    "ReferencedPatientAliasSequence": (_X, None, None),
    "InterpretationIDIssuer": (_X, None, None),
    "ResultsIDIssuer": (_X, None, None),
    "StudyIDIssuer": (_X, None, None),
    "DistributionName": (_X, None, None),
    "DistributionAddress": (_X, None, None),
    "NamesOfIntendedRecipientsOfResults": (_X, None, None),
    "IntendedRecipientsOfResultsIdentificationSequence": (_X, None, None),
    "OperatorIdentificationSequence": (_X, None, None),
    "PerformingPhysicianIdentificationSequence": (_X, None, None),
    "PhysiciansOfRecordIdentificationSequence": (_X, None, None),
    "PhysiciansReadingStudyIdentificationSequence": (_X, None, None),
    "ReferringPhysicianIdentificationSequence": (_X, None, None),
    "PersonIdentificationCodeSequence": (_X, None, None),
    "ContentCreatorIdentificationCodeSequence": (_X, None, None),
    "VerifyingObserverIdentificationCodeSequence": (_X, None, None),
    "CustodialOrganizationSequence": (_X, None, None),
    "VerifyingOrganization": (_X, None, None),
    "HumanPerformerOrganization": (_X, None, None),
    "PerformedStationGeographicLocationCodeSequence": (_X, None, None),
    "PerformedStationNameCodeSequence": (_X, None, None),
    "TopicAuthor": (_X, None, None),
    "TopicKeywords": (_X, None, None),
    "TopicSubject": (_X, None, None),
    "TopicTitle": (_X, None, None),
    "RTPlanLabel": (_Z, None, None),
    "RTPlanName": (_X, None, None),
    "RTPlanDescription": (_X, None, None),
    "StructureSetLabel": (_Z, None, None),
    "StructureSetName": (_X, None, None),
    "StructureSetDescription": (_X, None, None),
    "ROIInterpreter": (_Z, None, None),
    "ReviewerName": (_X, None, None),
    "ModifiedImageDescription": (_X, _DESC, _C),
    "ContributionDescription": (_X, _DESC, _C),
    "AcquisitionDeviceProcessingDescription": (_X, _DESC, _C),
    "AcquisitionProtocolDescription": (_X, _DESC, _C),
    "Impressions": (_X, _DESC, _C),
    "ImagePresentationComments": (_X, _DESC, _C),
    "ReasonForTheImagingServiceRequest": (_X, _DESC, _C),
    # patient characteristics (Retain Patient Characteristics keeps them)
    "PatientSex": (_Z, _PAT, _K),
    "PatientAge": (_X, _PAT, _K),
    "PatientSize": (_X, _PAT, _K),
    "PatientWeight": (_X, _PAT, _K),
    "EthnicGroup": (_X, _PAT, _K),
    "SmokingStatus": (_X, _PAT, _K),
    "PregnancyStatus": (_X, _PAT, _K),
    "PatientSexNeutered": (_X, _PAT, _K),
    "PatientSpeciesDescription": (_X, _PAT, _K),
    "PatientBreedDescription": (_X, _PAT, _K),
    # device identity (Retain Device Identity keeps them)
    "StationName": (_Z, _DEV, _K),
    "DeviceSerialNumber": (_Z, _DEV, _K),
    "DeviceID": (_X, _DEV, _K),
    "PlateID": (_X, _DEV, _K),
    "GeneratorID": (_X, _DEV, _K),
    "CassetteID": (_X, _DEV, _K),
    "GantryID": (_X, _DEV, _K),
    "DetectorID": (_X, _DEV, _K),
    "PerformedStationAETitle": (_X, _DEV, _K),
    "PerformedStationName": (_X, _DEV, _K),
    # not a Table E.1-1 row: the time server's network address names the site's network (review finding 10's
    # byte scan); a device's identity, kept only with Retain Device Identity
    "NTPSourceAddress": (_X, _DEV, _K),
    "PerformedLocation": (_X, _DEV, _K),
    "ScheduledStationAETitle": (_X, _DEV, _K),
    "ScheduledStationName": (_X, _DEV, _K),
    "ScheduledProcedureStepLocation": (_X, _DEV, _K),
    "SourceSerialNumber": (_X, _DEV, _K),
    "DeviceDescription": (_X, _DEV, _K),
    "ModifyingDeviceID": (_X, _DEV, _K),
    "ModifyingDeviceManufacturer": (_X, _DEV, _K),
    "SourceApplicationEntityTitle": (_X, _DEV, _K),  # file meta information: the sending device and node
    "SendingApplicationEntityTitle": (_X, _DEV, _K),
    "ReceivingApplicationEntityTitle": (_X, _DEV, _K),
    "SourcePresentationAddress": (_X, _DEV, _K),
    "SendingPresentationAddress": (_X, _DEV, _K),
    "ReceivingPresentationAddress": (_X, _DEV, _K),
    "PrivateInformation": (_X, None, None),
    # descriptors (Clean Descriptors keeps them when they carry no identifying value)
    "StudyDescription": (_X, _DESC, _C),
    "SeriesDescription": (_X, _DESC, _C),
    "ImageComments": (_X, _DESC, _C),
    "ProtocolName": (_Z, _DESC, _C),
    "AdmittingDiagnosesDescription": (_X, _DESC, _C),
    "AdmittingDiagnosesCodeSequence": (_X, _DESC, _C),
    "AdditionalPatientHistory": (_X, _DESC, _C),
    "Allergies": (_X, _DESC, _C),
    "MedicalAlerts": (_X, _DESC, _C),
    "PatientComments": (_X, _DESC, _C),
    "PatientState": (_X, _DESC, _C),
    "SpecialNeeds": (_X, _DESC, _C),
    "StudyComments": (_X, _DESC, _C),
    "VisitComments": (_X, _DESC, _C),
    "AcquisitionComments": (_X, _DESC, _C),
    "DerivationDescription": (_X, _DESC, _C),
    "FrameComments": (_X, _DESC, _C),
    "ContrastBolusAgent": (_Z, _DESC, _C),
    "PerformedProcedureStepDescription": (_X, _DESC, _C),
    "RequestedProcedureDescription": (_X, _DESC, _C),
    "ScheduledProcedureStepDescription": (_X, _DESC, _C),
    "CommentsOnThePerformedProcedureStep": (_X, _DESC, _C),
    "ReasonForTheRequestedProcedure": (_X, _DESC, _C),
    "ReasonForStudy": (_X, _DESC, _C),
    "RequestedContrastAgent": (_X, _DESC, _C),
    "ImagingServiceRequestComments": (_X, _DESC, _C),
    "RequestedProcedureComments": (_X, _DESC, _C),
    "InterpretationText": (_X, _DESC, _C),
    "InterpretationDiagnosisDescription": (_X, _DESC, _C),
    "ResultsComments": (_X, _DESC, _C),
    "DischargeDiagnosisDescription": (_X, _DESC, _C),
    "ServiceEpisodeDescription": (_X, _DESC, _C),
    "IdentifyingComments": (_X, _DESC, _C),
    "LabelText": (_X, _DESC, _C),
    "BodyPartExamined": (_K, None, None),
    # structured content (Clean Structured Content keeps it, its names, dates and UIDs processed)
    "ContentSequence": (_X, _SC, _C),
    "AcquisitionContextSequence": (_X, _SC, _C),
    "GraphicAnnotationSequence": (_X, None, None),
}


def action_for(keyword: str, options: frozenset[DeidOption]) -> Action | None:
    """What the profile with these options does to the attribute; None: not listed here."""
    row = TABLE.get(keyword)
    if row is None:
        return None
    basic, option, changed = row
    if option is not None and option in options and changed is not None:
        return changed
    return basic
